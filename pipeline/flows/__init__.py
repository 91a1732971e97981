"""The workflow layer: what mailpipe does with a mailbox, an email or a save, one flow per module.

Flows sit between the Dramatiq actors and the web routes above and the pure stages, protocol
clients, models and operations infrastructure below. A flow reads and writes the database, talks
to servers through the clients, decides with the stages, and hands further work on by job name
(:mod:`pipeline.jobs`), never by importing an actor.
"""
