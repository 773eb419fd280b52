{{/* Standard labels on every object of the release. */}}
{{- define "sinew.labels" -}}
app.kubernetes.io/part-of: sinew
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Image tag: the value, or the chart's appVersion. */}}
{{- define "sinew.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{- define "sinew.operatorImage" -}}
{{ .Values.image.registry }}/sinew-operator:{{ include "sinew.tag" . }}
{{- end -}}

{{- define "sinew.nodeImage" -}}
{{ .Values.image.registry }}/sinew-node:{{ include "sinew.tag" . }}
{{- end -}}

{{- define "sinew.operatorSelector" -}}
app.kubernetes.io/name: sinew-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
