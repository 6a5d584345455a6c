"""The Attic cache: which server and cache, the read plan, the netrc, the HTTP client."""
