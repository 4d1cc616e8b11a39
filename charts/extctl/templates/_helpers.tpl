{{- define "extctl.name" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "extctl.labels" -}}
app.kubernetes.io/name: extctl
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "extctl.selector" -}}
app.kubernetes.io/name: extctl
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
