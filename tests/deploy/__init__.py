"""Static checks of the deployment files: the Compose stack (docker-compose.yml, compose.cpu.yml) and the
container images (deploy/docker/). No Docker engine is needed."""
