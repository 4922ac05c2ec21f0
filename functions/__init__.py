"""dm's Cloud Functions entry points (one module each; ``main.py`` re-exports them).

A deployed bundle is not an installed package: the buildpack installs only
``requirements.txt``, so no ``dm.distributors`` entry point exists there.
Importing this package therefore provides the built-in distributors to every
registry dm builds (:func:`dmcore.distributor.provide`); dmcore itself never
names them.
"""

from __future__ import annotations

import distributors
from dmcore import distributor

distributor.provide(distributors.register_builtin)
