"""The test doubles, one place each: processes, stores, Attic, clocks, a front end, adapters."""
