"""A local Ensign server: Ensign's v1beta1 gRPC API and auth endpoint on 127.0.0.1.

The unmodified ``pyensign`` client connects to it over real gRPC and the events it
publishes are stored durably on disk. Start one with ``python -m local_ensign serve``
or, from Python, with :class:`local_ensign.launcher.LocalEnsign`; find the one running
for a data directory (or start it) with :func:`local_ensign.discovery.attach_or_start`.
"""

__version__ = "0.1.0"
