"""The runner: takes stored jobs through their life, composing git, egress, sandbox and agents."""
