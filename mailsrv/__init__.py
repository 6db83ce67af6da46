"""mailsrv: SMTP, IMAP, POP3 and JMAP over one maildir store."""

__version__ = "0.1.0"
