# The virtual board's flash filesystem, built into its image: MicroPython's "/" on
# the VM's in-memory folder /flash (tools/mpvm/board.mjs writes it back to the host).
# A thin VFS over VfsPosix that behaves as the ESP32's LittleFS does for its users
# (mpremote among them): errno numbers are MicroPython's (Emscripten's libc has the
# WASI numbers: ENOENT is 44 there), ilistdir gives sizes, a folder is not a file,
# rename works (VfsPosix with a root renames to a wrong path in this port).
import os

_ERRNO = {44: 2, 63: 1, 29: 5, 8: 9, 2: 13, 20: 17, 54: 20, 31: 21, 28: 22, 51: 28,
          55: 39, 69: 30}
_EISDIR = 21
_S_IFDIR = 0x4000


def _mp_error(e):
    code = e.args[0] if e.args else 0
    return OSError(_ERRNO.get(code, code))


class FlashVfs:
    def __init__(self, root):
        self._root = root
        self._vfs = os.VfsPosix(root)
        self._host = os.VfsPosix()  # the VM's own paths, for rename

    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def open(self, path, mode):
        try:
            if self._vfs.stat(path)[0] & _S_IFDIR:
                raise OSError(_EISDIR)
        except OSError as e:
            if e.args[0] != 44:  # a file that does not exist yet may be opened to write
                raise _mp_error(e)
        try:
            return self._vfs.open(path, mode)
        except OSError as e:
            raise _mp_error(e)

    def ilistdir(self, path):
        try:
            entries = list(self._vfs.ilistdir(path))
        except OSError as e:
            raise _mp_error(e)
        base = path.rstrip("/")
        for entry in entries:
            name, kind = entry[0], entry[1]
            size = 0 if kind & _S_IFDIR else self._vfs.stat(base + "/" + name)[6]
            yield (name, kind, 0, size)

    def _call(self, name, *args):
        try:
            return getattr(self._vfs, name)(*args)
        except OSError as e:
            raise _mp_error(e)

    def stat(self, path):
        return self._call("stat", path)

    def statvfs(self, path):
        return self._call("statvfs", path)

    def mkdir(self, path):
        return self._call("mkdir", path)

    def rmdir(self, path):
        return self._call("rmdir", path)

    def remove(self, path):
        return self._call("remove", path)

    def _full(self, path):
        return self._root + ("" if path.startswith("/") else "/") + path

    def rename(self, old, new):
        try:
            return self._host.rename(self._full(old), self._full(new))
        except OSError as e:
            raise _mp_error(e)

    def chdir(self, path):
        return self._call("chdir", path)

    def getcwd(self):
        return self._call("getcwd")


def mount(root):
    os.umount("/")
    os.mount(FlashVfs(root), "/")
    os.chdir("/")
