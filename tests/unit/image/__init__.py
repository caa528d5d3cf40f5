"""Unit tests of the VM image builder (vm_image/)."""
