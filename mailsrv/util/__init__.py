"""Small shared leaves: no knowledge of mail."""
