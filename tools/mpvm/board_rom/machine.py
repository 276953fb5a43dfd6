# The virtual board's `machine` module (built in, like the ESP32 port's): the parts
# mpremote and the firmware's console use. The board itself (tools/mpvm/board.mjs)
# does the resets through the `hal` JS module.
import hal

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5


def reset():
    hal.board_reset("hard")  # does not return: the VM ends here


def soft_reset():
    hal.board_reset("soft")


def reset_cause():
    return hal.reset_cause()


def unique_id():
    from binascii import unhexlify

    return unhexlify(hal.hardware_id())


def freq():
    return 160000000
