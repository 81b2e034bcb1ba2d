"""Time-based one-time passwords (TOTP, RFC 6238) as a second factor.

Setup stores a pending secret and shows it as a QR code; only a valid token
for that secret turns 2FA on. Each accepted token's time step is claimed
atomically in storage, so a token works once: a replayed or concurrently
reused one is refused.
"""

from __future__ import annotations

import base64
import hmac
import io
from datetime import UTC, datetime
from typing import Annotated

import pyotp
import qrcode
from pydantic import Field
from qrcode.image.pure import PyPNGImage

from merganser.errors import AuthenticationError, NotAllowedError
from merganser.resolvers.context import Core
from merganser.resolvers.inputs import IP, Input, Text
from merganser.resolvers.lookup import get_user
from merganser.resolvers.security import check_rate_limit, count_failure, log_event
from merganser.storage.base import User

Token = Annotated[str, Field(pattern=r"^[0-9]{6}$")]


class SetupTwoFactor(Input):
    issuer: Annotated[Text, Field(min_length=1)] = "merganser"
    ip: IP | None = None


class TwoFactorToken(Input):
    token: Token
    ip: IP | None = None


class TwoFactorIp(Input):
    ip: IP | None = None


def _qrcode_data_url(text: str) -> str:
    buffer = io.BytesIO()
    qrcode.make(text, image_factory=PyPNGImage).save(buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _matching_step(seed: str, token: str) -> int | None:
    """The time step the token belongs to, allowing one step of clock drift."""
    totp = pyotp.TOTP(seed)
    current = totp.timecode(datetime.now(UTC))
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(totp.generate_otp(step), token):
            return step
    return None


async def setup(core: Core, user_id: str, data: SetupTwoFactor) -> str:
    """Start enrolment; return the QR code of the new secret as a data: URL."""
    user = await get_user(core, user_id)
    if user.twofa_enabled:
        raise NotAllowedError("2FA is already enabled for this account")
    seed = pyotp.random_base32()
    await core.storage.update_user(user.id, {"twofa_pending_seed": seed})
    await log_event(core, user.id, "setup 2fa", "success", data.ip)
    uri = pyotp.TOTP(seed).provisioning_uri(name=user.address, issuer_name=data.issuer)
    return _qrcode_data_url(uri)


async def _claim(core: Core, user: User, seed: str, token: str, action: str, ip: str | None) -> None:
    """Accept the token once, or count a failure and refuse it."""
    await check_rate_limit(core, user.id, ip, action)
    step = _matching_step(seed, token)
    if step is None or not await core.storage.claim_twofa_step(user.id, step):
        await count_failure(core, user.id, ip)
        await log_event(core, user.id, action, "fail", ip)
        message = "Invalid 2FA token" if step is None else "This 2FA token was already used"
        raise AuthenticationError(message)
    await log_event(core, user.id, action, "success", ip)


async def enable(core: Core, user_id: str, data: TwoFactorToken) -> None:
    """Finish enrolment with a token from the authenticator app."""
    user = await get_user(core, user_id)
    if user.twofa_enabled:
        raise NotAllowedError("2FA is already enabled for this account")
    if not user.twofa_pending_seed:
        raise NotAllowedError("2FA setup has not been started; call setup first")
    await _claim(core, user, user.twofa_pending_seed, data.token, "enable 2fa", data.ip)
    await core.storage.update_user(
        user.id, {"twofa_enabled": True, "twofa_seed": user.twofa_pending_seed, "twofa_pending_seed": None}
    )


async def disable(core: Core, user_id: str, data: TwoFactorIp) -> None:
    user = await get_user(core, user_id)
    await core.storage.update_user(user.id, {"twofa_enabled": False, "twofa_seed": None, "twofa_pending_seed": None})
    await log_event(core, user.id, "disable 2fa", "success", data.ip)


async def check(core: Core, user_id: str, data: TwoFactorToken) -> None:
    """Validate a token after a login that answered ``require2fa``."""
    user = await get_user(core, user_id)
    if not user.twofa_enabled or not user.twofa_seed:
        raise NotAllowedError("2FA is not enabled for this account")
    await _claim(core, user, user.twofa_seed, data.token, "check 2fa", data.ip)
