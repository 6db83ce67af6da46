"""Inbound and outbound mail policy: sender authentication, reputation, content scanning, rate limits."""
