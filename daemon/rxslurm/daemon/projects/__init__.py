"""Projects, their members, roles, settings and workspaces."""
