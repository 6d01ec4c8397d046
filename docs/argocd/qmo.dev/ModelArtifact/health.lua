-- Argo CD health check for qmo.dev/ModelArtifact (Lua 5.1, as Argo CD's gopher-lua runs it).
-- Artifacts are made by qmo, not by Git; Argo CD shows them as children of their QuantizedModels.
local hs = {}
local status = obj.status
if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Evicting the cached files"
  return hs
end
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for qmo to observe the artifact"
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for qmo to observe generation " .. tostring(generation)
  return hs
end
local phase = status.phase
if phase == "Ready" then
  hs.status = "Healthy"
elseif phase == "Failed" then
  hs.status = "Degraded"
else
  -- Pending, Quantizing, Evicting.
  hs.status = "Progressing"
end
local message = status.message
if message == nil or message == "" then
  message = phase or "Waiting for qmo to set a phase"
end
hs.message = message
return hs
