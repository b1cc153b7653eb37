"""Names of the environment variables `lf` itself reads (runtimes declare theirs in their manifests)."""


class AppEnvVars:
    STATE_DIR = "LF_STATE_DIR"  # records, logs, locks of running instances
    DATA_DIR = "LF_DATA_DIR"  # isolated runtime environments, built models
    CONFIG = "LF_CONFIG"  # path of the llamafarm.yaml to use
    RUNTIMES_PATH = "LF_RUNTIMES_PATH"  # extra folders of runtime folders (os.pathsep-separated)
    LOG_MAX_BYTES = "LF_LOG_MAX_BYTES"  # a daemon's log is rotated at this size (0: never); read at start
    LOG_BACKUPS = "LF_LOG_BACKUPS"  # rotated logs kept beside it (<name>.log.1, …)
    DEBUG = "LF_DEBUG"  # show a traceback for unexpected errors
    NO_COLOR = "NO_COLOR"
