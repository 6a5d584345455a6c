"""The pure core: values and decisions shared by every front end. No I/O, no environment."""
