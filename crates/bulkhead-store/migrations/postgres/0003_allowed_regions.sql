-- Regions besides its home region where a tenant's data may go (a JSON array of names).
-- Egress fails closed for an endpoint in any other region.
ALTER TABLE tenants ADD COLUMN allowed_regions TEXT NOT NULL DEFAULT '[]';
