"""The volunteer daemon: detect, register, lease, verify, run, heartbeat, report, spool."""
