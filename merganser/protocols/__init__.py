"""Mail protocol front ends (LMTP, then IMAP and POP3) over the same core."""
