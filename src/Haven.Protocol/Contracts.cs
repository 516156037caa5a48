using System.Text.Json;
using System.Text.Json.Serialization;

namespace Haven.Protocol;

// The wire contracts of /api/v1, shared by the server, the agent and the admin CLI. JSON with snake_case names
// (ProtocolJson.Options); times are RFC 3339 in UTC. Adding a field is compatible; renaming or removing one needs
// /api/v2.

/// <summary>Every error response: a stable code, a message for people, and what to do.</summary>
public sealed record ApiError(string Error, string Message, string? Hint = null);

/// <summary>POST /api/v1/enroll: an agent with an enrolment token asks for a client certificate.</summary>
public sealed record EnrollRequest(string Token, string CsrPem, string Hostname, string? ClientName = null, string? AgentVersion = null);

public sealed record EnrollResponse(string ClientId, string TenantId, string ClientName, string CertificatePem, string CaPem, DateTimeOffset NotAfter, string? RepositoryKeyId = null);

/// <summary>POST /api/v1/agent/renew: a new certificate for the key in <see cref="CsrPem"/>, before the old one expires.</summary>
public sealed record RenewRequest(string CsrPem);

public sealed record RenewResponse(string CertificatePem, DateTimeOffset NotAfter);

/// <summary>POST /api/v1/agent/ready: the agent's ready signal (at start, when the network returns, on demand).</summary>
public sealed record ReadyRequest(string Reason, string Hostname, string? AgentVersion = null);

public sealed record ReadyResponse(string ClientId, string ClientName, string TenantId, DateTimeOffset ServerTime, DateTimeOffset CertificateNotAfter, bool RenewCertificate);

public sealed record TenantInfo(string Id, string Name, DateTimeOffset Created);

public sealed record CreateTenantRequest(string Name);

public sealed record ClientInfo(string Id, string TenantId, string Name, string? Hostname, DateTimeOffset Enrolled, DateTimeOffset? LastSeen, string CertificateFingerprint, DateTimeOffset CertificateNotAfter, DateTimeOffset? Revoked);

/// <summary>
/// POST /api/v1/tenants/{tenant}/enrollment-tokens. With a client name the token enrols that one client once; without,
/// it enrols up to <see cref="Uses"/> clients of the tenant, each naming itself.
/// </summary>
public sealed record CreateEnrollmentTokenRequest(string? ClientName = null, int? Uses = null, long? ExpiresInSeconds = null, string? RepositoryKeyId = null);

public sealed record EnrollmentTokenInfo(string Id, string Token, string TenantId, string? ClientName, int Uses, DateTimeOffset Expires, string? RepositoryKeyId = null);

public sealed record AdminInfo(string Id, string Name, string? TenantId, string Role, DateTimeOffset Created);

public sealed record CreateAdminRequest(string Name, string Password, string Role, string? TenantId = null);

/// <summary>POST /api/v1/auth/token: a password exchanged for an API token.</summary>
public sealed record LoginRequest(string Name, string Password);

public sealed record LoginResponse(string Token, string AdminId, string Role, string? TenantId);

/// <summary>
/// One refused authentication and the path it came by: the fingerprint an administrator follows to its source.
/// </summary>
public sealed record AuthFailureInfo(
    long Id,
    DateTimeOffset Time,
    string Kind,
    string Reason,
    string RemoteAddress,
    int RemotePort,
    string? ForwardedFor,
    string? CertificateFingerprint,
    string? CertificateSubject,
    string? ServerName,
    string? UserAgent,
    string Path);

public sealed record AuditEntry(long Id, DateTimeOffset Time, string Actor, string? TenantId, string Action, string Detail);

/// <summary>GET /api/v1/health, unauthenticated: enough to tell a Haven server is there, nothing more.</summary>
public sealed record HealthInfo(string Status, string Version, string CaFingerprint);

/// <summary>The serializer settings of the protocol.</summary>
public static class ProtocolJson
{
    public static JsonSerializerOptions Options { get; } = new(JsonSerializerDefaults.Web)
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        // Messages are read by programs and people, never embedded in HTML: keep apostrophes and non-ASCII as they are.
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };
}

/// <summary>One file of a hosted repository, as a listing names it.</summary>
public sealed record RepositoryFileInfo(string Name, long Size);

/// <summary>Which of these blob ids (hex) does the tenant's repository hold?</summary>
public sealed record CatalogQuery(IReadOnlyList<string> Ids);

public sealed record CatalogAnswer(IReadOnlyList<string> Known);

/// <summary>Packs an index file now names, with the blob ids in each.</summary>
public sealed record CatalogRegistration(IReadOnlyList<CatalogPackInfo> Packs);

public sealed record CatalogPackInfo(string Pack, IReadOnlyList<string> Blobs);

public sealed record CatalogRegistered(int Packs, int Blobs, int UnknownPacks);

/// <summary>A tenant's repository as the server sees it: bytes held, quota (null: none), whether it was initialised.</summary>
public sealed record RepositoryInfo(string TenantId, bool Initialized, long UsageBytes, long? QuotaBytes);

public sealed record SetQuotaRequest(long? QuotaBytes);
