"""The Kubernetes backend: functions as Deployments and Services on a cluster.

`backend.KubernetesBackend` implements `provider.backend.ProviderBackend`
with the official `kubernetes` client, and `server.run` serves it as
`faashub provider kubernetes`. The object mapping follows faas-netes, so
`faas-cli` and OpenFaaS callers see the same functions, labels and secrets.
"""
