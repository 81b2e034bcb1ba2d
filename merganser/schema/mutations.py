"""The root mutation: every change REST can make, plus deleting a user.

Each mutation names what it acts on with ID arguments and takes its values in
one ``input`` object, converted to the core's model (see ``inputs``). It
answers with the changed object, read again after the change, or ``true`` for
a deletion and for actions that only succeed or fail (2FA tokens).
"""

from __future__ import annotations

import strawberry
from strawberry import ID

from merganser.resolvers import addresses, asps, auth, lookup, mailboxes, messages, quota, twofa, users
from merganser.schema.context import Info
from merganser.schema.inputs import (
    AuthenticateInput,
    ClientInput,
    CreateAddressInput,
    CreateApplicationPasswordInput,
    CreateMailboxInput,
    CreateUserInput,
    SetupTwoFactorInput,
    TwoFactorTokenInput,
    UpdateAddressInput,
    UpdateMailboxInput,
    UpdateMessageInput,
    UpdateUserInput,
    UploadMessageInput,
    core_input,
)
from merganser.schema.types import (
    Address,
    ApplicationPassword,
    AuthResult,
    CreatedApplicationPassword,
    Mailbox,
    Message,
    TwoFactorSetup,
    User,
)


async def _user(info: Info, user_id: str) -> User:
    return User.from_record(await lookup.get_user(info.context.core, user_id))


@strawberry.type
class Mutation:
    # Users

    @strawberry.mutation(description="Create a user with its main address and default mailboxes.")
    async def create_user(self, info: Info, input: CreateUserInput) -> User:
        context = info.context
        created = await users.create_user(context.core, core_input(users.CreateUser, input, remote=context.remote))
        return User.from_record(created)

    @strawberry.mutation(description="Change a user; with existingPassword only if it verifies.")
    async def update_user(self, info: Info, id: ID, input: UpdateUserInput) -> User:
        context = info.context
        await users.update_user(context.core, id, core_input(users.UpdateUser, input, remote=context.remote))
        return await _user(info, id)

    @strawberry.mutation(description="Delete a user and everything stored for it.")
    async def delete_user(self, info: Info, id: ID) -> bool:
        await users.delete_user(info.context.core, id)
        return True

    @strawberry.mutation(description="Recount the bytes the user's messages take; answers the user.")
    async def reset_quota(self, info: Info, user: ID) -> User:
        await quota.reset(info.context.core, user)
        return await _user(info, user)

    # Authentication

    @strawberry.mutation(description="Check a password for a scope; every attempt is logged and rate-limited.")
    async def authenticate(self, info: Info, input: AuthenticateInput) -> AuthResult:
        context = info.context
        result = await auth.authenticate(context.core, core_input(auth.Authenticate, input, remote=context.remote))
        return AuthResult.from_result(result)

    @strawberry.mutation(description="Start 2FA enrolment with a new secret, shown as a QR code.")
    async def setup_two_factor(self, info: Info, user: ID, input: SetupTwoFactorInput | None = None) -> TwoFactorSetup:
        data = core_input(twofa.SetupTwoFactor, input, remote=info.context.remote)
        return TwoFactorSetup(qrcode=await twofa.setup(info.context.core, user, data))

    @strawberry.mutation(description="Finish 2FA enrolment with a token of the new secret.")
    async def enable_two_factor(self, info: Info, user: ID, input: TwoFactorTokenInput) -> bool:
        await twofa.enable(info.context.core, user, core_input(twofa.TwoFactorToken, input, remote=info.context.remote))
        return True

    @strawberry.mutation(description="Turn 2FA off.")
    async def disable_two_factor(self, info: Info, user: ID, input: ClientInput | None = None) -> bool:
        await twofa.disable(info.context.core, user, core_input(twofa.TwoFactorIp, input, remote=info.context.remote))
        return True

    @strawberry.mutation(description="Check a 2FA token after an authentication that required one; each works once.")
    async def check_two_factor(self, info: Info, user: ID, input: TwoFactorTokenInput) -> bool:
        await twofa.check(info.context.core, user, core_input(twofa.TwoFactorToken, input, remote=info.context.remote))
        return True

    @strawberry.mutation(description="Create an application-specific password; the answer shows it once.")
    async def create_application_password(
        self, info: Info, user: ID, input: CreateApplicationPasswordInput
    ) -> CreatedApplicationPassword:
        data = core_input(asps.CreateApplicationPassword, input, remote=info.context.remote)
        created = await asps.create_asp(info.context.core, user, data)
        return CreatedApplicationPassword(
            application_password=ApplicationPassword.from_record(created.asp), password=created.password
        )

    @strawberry.mutation
    async def delete_application_password(self, info: Info, user: ID, id: ID, input: ClientInput | None = None) -> bool:
        data = core_input(asps.ApplicationPasswordIp, input, remote=info.context.remote)
        await asps.delete_asp(info.context.core, user, id, data)
        return True

    # Addresses

    @strawberry.mutation(description="Add an address to a user, optionally as its main one.")
    async def create_address(self, info: Info, user: ID, input: CreateAddressInput) -> Address:
        core = info.context.core
        created = await addresses.create_address(core, user, core_input(addresses.CreateAddress, input))
        return Address.from_view(await addresses.get_address(core, user, created.id))

    @strawberry.mutation(description="Make an address the user's main one.")
    async def update_address(self, info: Info, user: ID, id: ID, input: UpdateAddressInput) -> Address:
        core = info.context.core
        await addresses.update_address(core, user, id, core_input(addresses.UpdateAddress, input))
        return Address.from_view(await addresses.get_address(core, user, id))

    @strawberry.mutation(description="Delete an address other than the main one.")
    async def delete_address(self, info: Info, user: ID, id: ID) -> bool:
        await addresses.delete_address(info.context.core, user, id)
        return True

    # Mailboxes

    @strawberry.mutation
    async def create_mailbox(self, info: Info, user: ID, input: CreateMailboxInput) -> Mailbox:
        created = await mailboxes.create_mailbox(info.context.core, user, core_input(mailboxes.CreateMailbox, input))
        return Mailbox.from_record(created)

    @strawberry.mutation(description="Rename (with the mailboxes below), change retention or subscription.")
    async def update_mailbox(self, info: Info, user: ID, id: ID, input: UpdateMailboxInput) -> Mailbox:
        core = info.context.core
        await mailboxes.update_mailbox(core, user, id, core_input(mailboxes.UpdateMailbox, input))
        return Mailbox.from_record(await mailboxes.find_mailbox(core, user, id))

    @strawberry.mutation(description="Delete a mailbox with its messages (not INBOX or a special-use one).")
    async def delete_mailbox(self, info: Info, user: ID, id: ID) -> bool:
        await mailboxes.delete_mailbox(info.context.core, user, id)
        return True

    # Messages

    @strawberry.mutation(description="Add a message (a draft, a sent copy, an import) to a mailbox.")
    async def upload_message(self, info: Info, user: ID, mailbox: ID, input: UploadMessageInput) -> Message:
        data = core_input(messages.UploadMessage, input)
        stored = await messages.upload(info.context.core, user, mailbox, data, data.raw.encode())
        return Message.from_record(stored)

    @strawberry.mutation(description="Set flags or expiry, or move the message (it keeps its id, gets a new uid).")
    async def update_message(self, info: Info, user: ID, mailbox: ID, id: ID, input: UpdateMessageInput) -> Message:
        data = core_input(messages.UpdateMessage, input, nulls={"expires": False})
        result = await messages.update_message(info.context.core, user, mailbox, id, data)
        return Message.from_record(result.message)

    @strawberry.mutation
    async def delete_message(self, info: Info, user: ID, mailbox: ID, id: ID) -> bool:
        await messages.delete_message(info.context.core, user, mailbox, id)
        return True
