"""The core: which instances a command means (targets), what lf does to them (actions), what their
state is (status). The CLI and the gateway both drive lf through lf.core.actions."""
