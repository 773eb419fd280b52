// Pins upstream helm, for the chart tests (lint, template, install, upgrade, uninstall).
module sinew.dev/e2e-tools/helm

go 1.26.0

require helm.sh/helm/v3 v3.22.0
