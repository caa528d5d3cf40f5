"""What the backend serves on the host: the published ports (`portfwd`), the docker.sock
guard (`apiguard`), the "link" shares' 9P server (`ninep`) and the host's file watchers
for change notifications (`filewatch`)."""
