# The error tree of the application (the cores keep theirs in wattcore.errors).
#
# AppError
#  +-- ConfigError    a configuration file breaks its schema: the message names the
#  |                  file, the key and what is allowed
#  +-- StorageError   persisted state cannot be read back safely (the device stops
#                     rather than reuse a sequence number or change its key silently)


class AppError(Exception):
    pass


class ConfigError(AppError):
    pass


class StorageError(AppError):
    pass
