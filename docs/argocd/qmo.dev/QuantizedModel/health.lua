-- Argo CD health check for qmo.dev/QuantizedModel (Lua 5.1, as Argo CD's gopher-lua runs it).
-- Healthy only when the operator has seen the current spec and reports Ready; a status that predates the
-- last spec change says nothing yet, so it is Progressing whatever its phase.
local hs = {}
local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for qmo to observe the model"
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for qmo to observe generation " .. tostring(generation)
  return hs
end
local phase = status.phase
local message = status.message
if phase == "Ready" then
  hs.status = "Healthy"
elseif phase == "Failed" or phase == "Degraded" then
  hs.status = "Degraded"
elseif phase == nil then
  hs.status = "Progressing"
  message = message or "Waiting for qmo to set a phase"
else
  -- Pending, Planning, Quantizing, Deploying, and any phase a newer operator may add.
  hs.status = "Progressing"
end
if message == nil or message == "" then
  message = phase
end
hs.message = message
return hs
