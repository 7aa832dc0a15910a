"""ServeModel, ServeEvent and ServeRevision arrive with the serving control plane."""
