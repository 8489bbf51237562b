"""The Helm chart, its plain manifests, and the renderer that tests them without helm."""
