"""Operations: settings, keys and crypto, logging, metrics, migrations, API keys and files on disk
(imported by every layer), and the processes' entry points (the ``mailpipe`` CLI and runtimes, the top)."""
