namespace Haven.Server.Security;

/// <summary>Administrator roles. <c>provider</c> runs the server and sees every tenant; the others see their own tenant.</summary>
public static class Roles
{
    public const string Provider = "provider";
    public const string Admin = "admin";
    public const string Viewer = "viewer";

    public static bool IsKnown(string role) => role is Provider or Admin or Viewer;
}

/// <summary>An administrator authenticated by an API token.</summary>
public sealed record AdminPrincipal(string Id, string Name, string Role, string? TenantId)
{
    public bool IsProvider => Role == Roles.Provider;

    /// <summary>May see <paramref name="tenantId"/>: the provider sees every tenant, others only their own.</summary>
    public bool CanRead(string tenantId) => IsProvider || TenantId == tenantId;

    /// <summary>May change <paramref name="tenantId"/>: as <see cref="CanRead"/>, without viewers.</summary>
    public bool CanWrite(string tenantId) => IsProvider || (Role == Roles.Admin && TenantId == tenantId);
}

/// <summary>An enrolled client, authenticated by its certificate.</summary>
public sealed record AgentPrincipal(string ClientId, string TenantId, string Name, string CertificateFingerprint, DateTimeOffset CertificateNotAfter);
