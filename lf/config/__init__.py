"""The project's llamafarm.yaml: finding it, reading it with positions, validating it (pydantic models
built from the runtime registry), and its normalised form, cached so the status path stays light."""
