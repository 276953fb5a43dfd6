# The storage port on a real filesystem (the ESP32's LittleFS, or a host folder
# under CPython). Every persistent module (sequence, spool, keystore) uses only
# these methods, so a fault-injecting or JS-backed storage can stand in:
#   read(name, offset=0, n=-1) -> bytes, or None when the file does not exist
#   size(name) -> int, -1 when the file does not exist
#   append(name, data)          data lands at the end of the file
#   write_atomic(name, data)    the file holds the old or the new bytes, never a mix
#   remove(name)                no error when absent
#   names() -> list of file names
#   writes                      number of write operations so far (for the benchmark)
# Names are flat (no "/"): the storage is one folder.
import os

_TMP_SUFFIX = ".tmp"


class FlashStorage:
    def __init__(self, root):
        self.root = root.rstrip("/")
        self.writes = 0
        try:
            os.mkdir(self.root)
        except OSError:
            pass  # exists

    def _path(self, name):
        return self.root + "/" + name

    def read(self, name, offset=0, n=-1):
        try:
            f = open(self._path(name), "rb")
        except OSError:
            return None
        try:
            if offset:
                f.seek(offset)
            return f.read() if n < 0 else f.read(n)
        finally:
            f.close()

    def size(self, name):
        try:
            return os.stat(self._path(name))[6]
        except OSError:
            return -1

    def append(self, name, data):
        self.writes += 1
        with open(self._path(name), "ab") as f:
            f.write(data)

    def write_atomic(self, name, data):
        # write a temporary file, then rename it over the old one (LittleFS renames
        # atomically, so a power cut leaves the old or the new file)
        self.writes += 1
        tmp = self._path(name + _TMP_SUFFIX)
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, self._path(name))

    def remove(self, name):
        try:
            os.remove(self._path(name))
        except OSError:
            pass

    def names(self):
        return [n for n in os.listdir(self.root) if not n.endswith(_TMP_SUFFIX)]
