"""Names of the environment variables `lf` itself reads (runtimes declare theirs in their manifests)."""


class AppEnvVars:
    STATE_DIR = "LF_STATE_DIR"  # records, logs, locks of running instances
    DATA_DIR = "LF_DATA_DIR"  # isolated runtime environments, built models
    CONFIG = "LF_CONFIG"  # path of the llamafarm.yaml to use
    RUNTIMES_PATH = "LF_RUNTIMES_PATH"  # extra folders of runtime folders (os.pathsep-separated)
    DEBUG = "LF_DEBUG"  # show a traceback for unexpected errors
    NO_COLOR = "NO_COLOR"
