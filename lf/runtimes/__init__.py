"""Runtimes: the folders that declare them (manifest.toml, settings, engines, hooks), the isolated
environments some of them need, and how an instance's settings become the Instance lf launches."""
