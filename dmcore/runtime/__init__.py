"""How dm runs on a machine: the embedded backend, the gcp backend built from the
environment, ``dm serve``, emulator launchers and process helpers."""
