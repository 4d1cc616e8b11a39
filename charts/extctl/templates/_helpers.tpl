{{- /* The release's name: every object's name, the Lease's name, the metrics job's prefix. */ -}}
{{- define "extctl.name" -}}
{{- .Release.Name | trunc 53 | trimSuffix "-" -}}
{{- end -}}

{{- define "extctl.labels" -}}
app.kubernetes.io/name: extctl
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "extctl.selector" -}}
app.kubernetes.io/name: extctl
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- /* The image reference: by digest when one is given, else by tag (default: appVersion). */ -}}
{{- define "extctl.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{- /* PromQL label matchers selecting this release's series (the ServiceMonitor's job). */ -}}
{{- define "extctl.promSelector" -}}
{{- .Values.prometheusRule.selector | default (printf "job=%q" (printf "%s-metrics" (include "extctl.name" .))) -}}
{{- end -}}

{{- /* `reports` as extctl's --reports reads it: YAML reads an unquoted off as false. */ -}}
{{- define "extctl.reports" -}}
{{- if eq (toString .Values.reports) "false" }}off{{ else }}{{ .Values.reports }}{{ end -}}
{{- end -}}

{{- /* A duration such as 72h, 30m or 1h30m (the values schema's pattern) in whole seconds. */ -}}
{{- define "extctl.seconds" -}}
{{- $total := 0 -}}
{{- range regexFindAll "[0-9]+[hms]" . -1 -}}
{{- $n := trimSuffix "h" (trimSuffix "m" (trimSuffix "s" .)) | atoi -}}
{{- if hasSuffix "h" . -}}
{{- $total = add $total (mul $n 3600) -}}
{{- else if hasSuffix "m" . -}}
{{- $total = add $total (mul $n 60) -}}
{{- else -}}
{{- $total = add $total $n -}}
{{- end -}}
{{- end -}}
{{- $total -}}
{{- end -}}
