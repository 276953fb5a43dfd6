# The meter application: the loops and the persistent state of a Wattshare meter,
# written against ports passed in (meter bus, UDP socket, clock, storage, RNG,
# watchdog, network) so the same files run on the ESP32 and in the emulated device.
# Only firmware/main.py wires ports to these classes.
