using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Haven.Core;
using Haven.Protocol;

namespace Haven.Agent;

/// <summary>Enrolment, ready signals and certificate renewal: the agent's side of /api/v1/enroll and /api/v1/agent.</summary>
public static class AgentClient
{
    public static string AgentVersion { get; } = typeof(AgentClient).Assembly.GetName().Version?.ToString(3) ?? "0.0.0";

    /// <summary>
    /// Enrols with <paramref name="tokenText"/>: makes a key pair, sends a certificate request over TLS pinned to the CA
    /// fingerprint in the token, checks that the CA the server returns is that CA, and saves everything in
    /// <paramref name="state"/>. Refuses to overwrite an existing enrolment.
    /// </summary>
    public static async Task<AgentIdentity> EnrollAsync(AgentState state, Uri server, string tokenText, string? clientName, CancellationToken ct)
    {
        var token = EnrollmentToken.Parse(tokenText);
        if (state.IsEnrolled)
        {
            var existing = state.LoadIdentity();
            throw new HavenException(ErrorCode.Usage, $"this agent is already enrolled as {existing.ClientName} with {existing.ServerUrl}", $"to enrol again, remove {state.Folder} first");
        }

        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        string csr = NewCsr(key);
        using var api = await ApiClient.ConnectAsync(server, token.CaFingerprint, ct: ct).ConfigureAwait(false);
        var response = await api.PostAsync<EnrollResponse>("api/v1/enroll", new EnrollRequest(tokenText.Trim(), csr, Environment.MachineName, clientName, AgentVersion), ct).ConfigureAwait(false);

        using var ca = X509Certificate2.CreateFromPem(response.CaPem);
        if (!CryptographicOperations.FixedTimeEquals(Pinning.FingerprintBytes(ca), token.CaFingerprint))
        {
            throw new HavenException(ErrorCode.AccessDenied, "the server answered with a CA other than the one the token names", "ask the administrator for a new token");
        }

        var identity = new AgentIdentity(server.ToString(), Convert.ToHexStringLower(token.CaFingerprint), response.ClientId, response.TenantId, response.ClientName, DateTimeOffset.UtcNow);
        state.Save(identity, key.ExportPkcs8PrivateKeyPem(), response.CertificatePem, response.CaPem);
        return identity;
    }

    /// <summary>An API client authenticated by the agent's certificate.</summary>
    public static ApiClient Connect(AgentState state)
    {
        var identity = state.LoadIdentity();
        return new ApiClient(new Uri(identity.ServerUrl), state.LoadCa(), state.LoadCertificate());
    }

    /// <summary>Sends a ready signal; renews the certificate when the server says it is time. Returns the server's answer.</summary>
    public static async Task<ReadyResponse> ReadyAsync(AgentState state, string reason, CancellationToken ct)
    {
        ReadyResponse answer;
        using (var api = Connect(state))
        {
            answer = await api.PostAsync<ReadyResponse>("api/v1/agent/ready", new ReadyRequest(reason, Environment.MachineName, AgentVersion), ct).ConfigureAwait(false);
        }

        if (answer.RenewCertificate)
        {
            await RenewAsync(state, ct).ConfigureAwait(false);
        }

        return answer;
    }

    /// <summary>Replaces the certificate (and key) with a new one; the old one stays valid until it expires.</summary>
    public static async Task<RenewResponse> RenewAsync(AgentState state, CancellationToken ct)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var api = Connect(state);
        var renewed = await api.PostAsync<RenewResponse>("api/v1/agent/renew", new RenewRequest(NewCsr(key)), ct).ConfigureAwait(false);
        state.SaveCertificate(key.ExportPkcs8PrivateKeyPem(), renewed.CertificatePem);
        return renewed;
    }

    private static string NewCsr(ECDsa key) =>
        new CertificateRequest($"CN={Environment.MachineName}", key, HashAlgorithmName.SHA256).CreateSigningRequestPem();
}
