"""The GitHub Actions front end: the event, the gate, workflow commands, outputs, summary."""
