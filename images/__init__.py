"""Docker images for the env server: the base image, one image per task instance, and the sample tasks.

`python -m images --help` lists the commands.
"""
