"""Local delivery: recipient resolution against the directory, spool files, durable store delivery."""
