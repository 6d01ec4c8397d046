{{/* Names and labels shared by every template. */}}

{{- define "qmo.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "qmo.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "qmo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qmo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "qmo.labels" -}}
{{ include "qmo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: qmo
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "qmo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "qmo.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "qmo.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The RBAC rules qmo needs (files/rbac-rules.yaml), as a dict. */}}
{{- define "qmo.rules" -}}
{{- .Files.Get "files/rbac-rules.yaml" -}}
{{- end -}}

{{/* Rules for one watched scope: the namespaced ones, the token Secret, and peering when enabled. */}}
{{- define "qmo.namespacedRules" -}}
{{- $rules := include "qmo.rules" . | fromYaml -}}
{{- $secret := deepCopy $rules.tokenSecrets -}}
{{- with .Values.rbac.tokenSecretNames }}
{{- $_ := set $secret "resourceNames" . -}}
{{- end }}
{{- $all := concat $rules.namespaced (list $secret) -}}
{{- if and .Values.peering.enabled .Values.watchNamespaces -}}
{{- $all = concat $all $rules.namespacedPeering -}}
{{- end -}}
{{- toYaml $all -}}
{{- end -}}

{{- define "qmo.clusterRules" -}}
{{- $rules := include "qmo.rules" . | fromYaml -}}
{{- $all := $rules.cluster -}}
{{- if .Values.rbac.readNodes -}}
{{- $all = concat $all $rules.nodes -}}
{{- end -}}
{{- if .Values.watchNamespaces -}}
{{- $all = concat $all $rules.namespacedMode -}}
{{- end -}}
{{- if and .Values.peering.enabled (not .Values.watchNamespaces) -}}
{{- $all = concat $all $rules.clusterPeering -}}
{{- end -}}
{{- toYaml $all -}}
{{- end -}}
