"""SMTP: inbound MTA (port 25) and authenticated submission (587, 465)."""
