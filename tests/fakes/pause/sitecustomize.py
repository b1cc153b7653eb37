"""Fault injection for `lf` subprocesses: on PYTHONPATH (tests put this folder there) with
LF_TEST_PAUSE=module:Qualified.name:seconds, the named function first writes LF_TEST_PAUSE_MARKER and
sleeps, so a test can act (send a signal, take a port) at exactly that step of a start. The daemons lf
starts inherit the variables too, harmlessly: they never call lf's functions."""

import os

_spec = os.environ.get("LF_TEST_PAUSE")
if _spec:
    import importlib
    import time

    _module, _qualname, _seconds = _spec.split(":")
    _marker = os.environ["LF_TEST_PAUSE_MARKER"]

    def _install() -> None:
        owner = importlib.import_module(_module)
        *path, name = _qualname.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, name)

        def paused(*args, **kwargs):
            with open(_marker, "a") as fh:
                fh.write(f"{os.getpid()}\n")
            time.sleep(float(_seconds))
            return original(*args, **kwargs)

        setattr(owner, name, paused)

    try:
        _install()
    except ImportError:
        pass
