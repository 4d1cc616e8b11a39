-- Argo CD health of an extctl ExternalControl, from its Compliant condition: Healthy once the
-- checker reported pass (or not_applicable), Degraded while the control is not compliant (it
-- reported fail, or was notified and never answered), Progressing until there is a result,
-- when the last one has expired (gate.maxStaleness), or while extctl has not yet seen the
-- control's latest spec. Only Lua's base functions: Argo CD opens no string library.
local hs = {}
local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for extctl to assess the control"
  return hs
end
if obj.metadata.generation ~= nil and status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for extctl to observe generation " .. tostring(obj.metadata.generation)
  return hs
end
local compliant = nil
for _, condition in ipairs(status.conditions) do
  if condition.type == "Compliant" then
    compliant = condition
  end
end
if compliant == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for extctl to assess the control"
  return hs
end
if compliant.status == "True" then
  hs.status = "Healthy"
elseif compliant.status == "False" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = compliant.reason
if compliant.message ~= nil and compliant.message ~= "" then
  hs.message = compliant.reason .. ": " .. compliant.message
end
return hs
