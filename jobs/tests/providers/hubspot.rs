//! HubSpot client against the HubSpot imitation.
