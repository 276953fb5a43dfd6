# Wattshare sans-IO cores, shared by the ESP32 firmware (MicroPython) and the
# gateway and tools (CPython). Bytes in, values or bytes out: no machine,
# socket, time or asyncio imports in this package.
