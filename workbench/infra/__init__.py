"""Infrastructure every layer uses: the one user-facing error type, atomic file writes, the plugin registry, process memory."""
