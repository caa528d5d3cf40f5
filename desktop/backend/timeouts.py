"""How long the backend waits for each thing (read at the time of use, so tests may
shorten them)."""

AGENT_TIMEOUT = 120.0  # power-on to the agent's hello (TCG first boot: ~10 s here)
RESTORE_AGENT_TIMEOUT = 30.0  # a restored VM's agent runs already: it answers at once
ENGINE_TIMEOUT = 180.0  # hello to the engine answering
TIME_PUSH_INTERVAL = 10.0
STOP_AGENT_TIMEOUT = 90.0  # the agent stops containers with their own timeouts
STOP_ACPI_TIMEOUT = 20.0
# Before the VM rests, while QEMU's memory keeps falling: the guest's kernel reports free
# pages in passes 2 s apart while some are left, so memory that has not fallen for longer
# is all given back; the kernel's own aim is all of an idle guest's pages in about 30 s.
GIVEN_BACK_QUIET = 3.0
GIVEN_BACK_LONGEST = 30.0
