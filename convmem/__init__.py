"""convmem: memory for the stateless chat-completions API."""
